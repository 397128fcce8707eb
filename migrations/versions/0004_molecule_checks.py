"""molecules: chemical validity checks per structure

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

- molecule_check: RDKit bond perception, the PoseBusters molecule checks and EDM stability of one molecule,
  one column per check, with its canonical SMILES and whether it is new to the training set.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

CHECKS = ('bonds_determined', 'sanitization', 'inchi_convertible', 'all_atoms_connected', 'no_radicals', 'bond_lengths',
          'bond_angles', 'internal_steric_clash', 'aromatic_ring_flatness', 'nonaromatic_ring_nonflatness',
          'double_bond_flatness', 'internal_energy')


def upgrade() -> None:
    op.create_table(
        'molecule_check',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('campaign_id', sa.Integer(), nullable=False),
        sa.Column('structure_id', sa.Integer(), nullable=False),
        sa.Column('task_id', sa.Integer(), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        *[sa.Column(name, sa.Boolean(), nullable=True) for name in CHECKS],
        sa.Column('passes_all', sa.Boolean(), nullable=False),
        sa.Column('smiles', sa.Text(), nullable=True),
        sa.Column('novel', sa.Boolean(), nullable=True),
        sa.Column('atoms_stable', sa.Double(), nullable=True),
        sa.Column('molecule_stable', sa.Boolean(), nullable=True),
        sa.Column('wall_time_s', sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_molecule_check_campaign_id_campaign'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['structure_id'], ['structure.id'],
                                name=op.f('fk_molecule_check_structure_id_structure'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['task_id'], ['task.id'], name=op.f('fk_molecule_check_task_id_task'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_molecule_check')),
        sa.UniqueConstraint('structure_id', name=op.f('uq_molecule_check_structure_id')),
    )
    op.create_index(op.f('ix_molecule_check_campaign_id'), 'molecule_check', ['campaign_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_molecule_check_campaign_id'), table_name='molecule_check')
    op.drop_table('molecule_check')
