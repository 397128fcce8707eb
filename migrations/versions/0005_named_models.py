"""named models: which models a campaign uses, which model made each structure, each task's group

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

- campaign_model: the models of a campaign by name (the plain `model:` key is the model named 'default');
  existing campaigns get their campaign.model_id as 'default'.
- structure.model_id: the model that generated or relaxed the structure (RSS and reference structures get their
  campaign's model).
- task.formula: the composition (or group) a task works on, for time per composition in reports; filled from the
  stored payloads.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
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


def _restore(views: list[str]) -> None:
    for sql in views:
        op.execute(sql)


def upgrade() -> None:
    views = _drop_sqlite_views()
    op.create_table(
        'campaign_model',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('campaign_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('model_id', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_campaign_model_campaign_id_campaign'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_campaign_model_model_id_model')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_campaign_model')),
        sa.UniqueConstraint('campaign_id', 'name', name=op.f('uq_campaign_model_campaign_id_name')),
    )
    with op.batch_alter_table('structure') as batch_op:
        batch_op.add_column(sa.Column('model_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_structure_model_id_model'), 'model', ['model_id'], ['id'])
        batch_op.create_index(batch_op.f('ix_structure_model_id'), ['model_id'], unique=False)
    with op.batch_alter_table('task') as batch_op:
        batch_op.add_column(sa.Column('formula', sa.String(), nullable=True))
    _restore(views)
    conn = op.get_bind()
    conn.execute(sa.text("INSERT INTO campaign_model (campaign_id, name, model_id) "
                         "SELECT id, 'default', model_id FROM campaign WHERE model_id IS NOT NULL"))
    conn.execute(sa.text("UPDATE structure SET model_id = (SELECT campaign.model_id FROM campaign "
                         "WHERE campaign.id = structure.campaign_id) WHERE origin IN ('rss', 'reference')"))
    task = sa.table('task', sa.column('id', sa.Integer), sa.column('payload', sa.JSON), sa.column('formula', sa.String))
    for task_id, payload in conn.execute(sa.select(task.c.id, task.c.payload)).all():
        formula = (payload or {}).get('formula')
        if formula:
            conn.execute(task.update().where(task.c.id == task_id).values(formula=formula))


def downgrade() -> None:
    views = _drop_sqlite_views()
    with op.batch_alter_table('task') as batch_op:
        batch_op.drop_column('formula')
    with op.batch_alter_table('structure') as batch_op:
        batch_op.drop_index(batch_op.f('ix_structure_model_id'))
        batch_op.drop_constraint(batch_op.f('fk_structure_model_id_model'), type_='foreignkey')
        batch_op.drop_column('model_id')
    op.drop_table('campaign_model')
    _restore(views)
