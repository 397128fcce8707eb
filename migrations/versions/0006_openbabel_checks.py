"""molecules: a second validity checker (Open Babel bond perception, PoseBusters' 2024 checks)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

- molecule_check.ob_*: the checks of the RM paper's list on bonds Open Babel perceives, beside the RDKit ones, and
  ob_passes_all. NULL for molecules checked before this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

COLUMNS = ('ob_sanitization', 'ob_all_atoms_connected', 'ob_bond_lengths', 'ob_bond_angles', 'ob_internal_steric_clash',
           'ob_aromatic_ring_flatness', 'ob_double_bond_flatness', 'ob_internal_energy', 'ob_passes_all')


def upgrade() -> None:
    with op.batch_alter_table('molecule_check') as batch_op:  # no view reads molecule_check
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('molecule_check') as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
