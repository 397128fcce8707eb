"""re-scoring and matching: calculation failures, reference matches, re-scored pairs view

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

- calculation_failure: a structure a method could not evaluate, with the error;
- structure_match: a unique structure that matches a reference structure;
- view rescored_pairs: each re-scored structure beside its parent's pseudo energy.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

VIEWS = {
    "rescored_pairs": """
        SELECT c.name AS campaign, comp.formula, s.parent_id, s.id AS structure_id, e.method,
               pe.per_atom AS pseudo_energy_per_atom, e.per_atom AS energy_per_atom, e.converged, e.n_steps,
               s.spacegroup, s.volume_per_atom, s.origin
        FROM structure s
        JOIN campaign c ON c.id = s.campaign_id
        JOIN composition comp ON comp.id = s.composition_id
        JOIN energy e ON e.structure_id = s.id AND e.method <> 'rm_pseudo'
        JOIN energy pe ON pe.structure_id = s.parent_id AND pe.method = 'rm_pseudo'
    """,
}


def upgrade() -> None:
    op.create_table(
        'calculation_failure',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('campaign_id', sa.Integer(), nullable=False),
        sa.Column('structure_id', sa.Integer(), nullable=False),
        sa.Column('task_id', sa.Integer(), nullable=True),
        sa.Column('method', sa.String(length=64), nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('wall_time_s', sa.Double(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'],
                                name=op.f('fk_calculation_failure_campaign_id_campaign'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['structure_id'], ['structure.id'],
                                name=op.f('fk_calculation_failure_structure_id_structure'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['task_id'], ['task.id'], name=op.f('fk_calculation_failure_task_id_task'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_calculation_failure')),
        sa.UniqueConstraint('structure_id', 'method', name=op.f('uq_calculation_failure_structure_id_method')),
    )
    op.create_index(op.f('ix_calculation_failure_campaign_id'), 'calculation_failure', ['campaign_id'], unique=False)
    op.create_index(op.f('ix_calculation_failure_structure_id'), 'calculation_failure', ['structure_id'], unique=False)
    op.create_table(
        'structure_match',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('campaign_id', sa.Integer(), nullable=False),
        sa.Column('structure_id', sa.Integer(), nullable=False),
        sa.Column('reference_source', sa.Text(), nullable=False),
        sa.Column('reference_index', sa.Integer(), nullable=False),
        sa.Column('reference_name', sa.String(length=200), nullable=True),
        sa.Column('reference_energy_per_atom', sa.Double(), nullable=True),
        sa.Column('reference_energy_rank', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_structure_match_campaign_id_campaign'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['structure_id'], ['structure.id'],
                                name=op.f('fk_structure_match_structure_id_structure'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_structure_match')),
        sa.UniqueConstraint('campaign_id', 'structure_id', 'reference_source',
                            name=op.f('uq_structure_match_campaign_id_structure_id_reference_source')),
    )
    op.create_index(op.f('ix_structure_match_campaign_id'), 'structure_match', ['campaign_id'], unique=False)
    op.create_index(op.f('ix_structure_match_structure_id'), 'structure_match', ['structure_id'], unique=False)
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
    op.drop_index(op.f('ix_structure_match_structure_id'), table_name='structure_match')
    op.drop_index(op.f('ix_structure_match_campaign_id'), table_name='structure_match')
    op.drop_table('structure_match')
    op.drop_index(op.f('ix_calculation_failure_structure_id'), table_name='calculation_failure')
    op.drop_index(op.f('ix_calculation_failure_campaign_id'), table_name='calculation_failure')
    op.drop_table('calculation_failure')
