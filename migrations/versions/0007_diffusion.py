"""diffusion: the sampler of generated molecules, MoreRed Table B1 validity, Open Babel SMILES and novelty

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

- structure.sampler: ddpm, morered-jt or morered-as for molecules of origin diffusion (NULL otherwise).
- molecule_check.connected_valence, ob_smiles, ob_novel: G-SchNet's validity rule on Open Babel bonds, the canonical
  SMILES it yields, and whether that SMILES is absent from QM9. NULL for molecules checked before this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def _drop_sqlite_views() -> list[str]:
    """SQLite rebuilds altered tables (batch mode), so views over them must go first; returns their SQL to restore."""
    conn = op.get_bind()
    if conn.dialect.name != 'sqlite':
        return []
    views = conn.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY rowid")).all()
    for name, _ in reversed(views):
        op.execute(f"DROP VIEW {name}")
    return [sql for _, sql in views]


def upgrade() -> None:
    views = _drop_sqlite_views()
    with op.batch_alter_table('structure') as batch_op:
        batch_op.add_column(sa.Column('sampler', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_structure_sampler'), ['sampler'], unique=False)
    with op.batch_alter_table('molecule_check') as batch_op:
        batch_op.add_column(sa.Column('connected_valence', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('ob_smiles', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('ob_novel', sa.Boolean(), nullable=True))
    for sql in views:
        op.execute(sql)


def downgrade() -> None:
    views = _drop_sqlite_views()
    with op.batch_alter_table('molecule_check') as batch_op:
        for name in ('ob_novel', 'ob_smiles', 'connected_valence'):
            batch_op.drop_column(name)
    with op.batch_alter_table('structure') as batch_op:
        batch_op.drop_index(batch_op.f('ix_structure_sampler'))
        batch_op.drop_column('sampler')
    for sql in views:
        op.execute(sql)
