"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21 23:41:58.668816

All tables of the store, plus the SQL views users query:
- structure_energies: one row per structure and energy method, with campaign and formula;
- best_candidates: the lowest energy per atom per campaign, composition and method;
- hull: hull entries with campaign, formula, structure id and energy.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


VIEWS = {
    "structure_energies": """
        SELECT c.name AS campaign, s.id AS structure_id, s.origin, s.parent_id,
               comp.formula, comp.reduced_formula, comp.chemsys, s.n_atoms, s.volume_per_atom,
               e.method, e.total AS energy, e.per_atom AS energy_per_atom, e.fmax, e.converged, e.n_steps
        FROM structure s
        JOIN campaign c ON c.id = s.campaign_id
        JOIN composition comp ON comp.id = s.composition_id
        JOIN energy e ON e.structure_id = s.id
    """,
    "best_candidates": """
        SELECT campaign, formula, reduced_formula, chemsys, n_atoms, method,
               structure_id, energy_per_atom, energy, volume_per_atom
        FROM (
            SELECT se.*, ROW_NUMBER() OVER (
                PARTITION BY se.campaign, se.formula, se.method
                ORDER BY se.energy_per_atom, se.structure_id
            ) AS position
            FROM structure_energies se
        ) ranked
        WHERE position = 1
    """,
    "hull": """
        SELECT c.name AS campaign, h.method, comp.formula, comp.reduced_formula, comp.chemsys,
               h.structure_id, e.per_atom AS energy_per_atom,
               h.formation_energy_per_atom, h.e_above_hull, h.is_stable
        FROM hull_entry h
        JOIN campaign c ON c.id = h.campaign_id
        JOIN structure s ON s.id = h.structure_id
        JOIN composition comp ON comp.id = s.composition_id
        LEFT JOIN energy e ON e.structure_id = h.structure_id AND e.method = h.method
    """,
}


def upgrade() -> None:
    op.create_table('campaign',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('spec', sa.Text(), nullable=False),
    sa.Column('spec_hash', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaign')),
    sa.UniqueConstraint('name', name=op.f('uq_campaign_name'))
    )
    op.create_table('composition',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('formula', sa.String(), nullable=False),
    sa.Column('reduced_formula', sa.String(), nullable=False),
    sa.Column('chemsys', sa.String(), nullable=False),
    sa.Column('n_atoms', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_composition')),
    sa.UniqueConstraint('formula', name=op.f('uq_composition_formula'))
    )
    with op.batch_alter_table('composition', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_composition_chemsys'), ['chemsys'], unique=False)
        batch_op.create_index(batch_op.f('ix_composition_reduced_formula'), ['reduced_formula'], unique=False)

    op.create_table('model',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('hyperparameters', sa.JSON(), nullable=False),
    sa.Column('weights', sa.LargeBinary(), nullable=False),
    sa.Column('training_data', sa.JSON(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model')),
    sa.UniqueConstraint('sha256', name=op.f('uq_model_sha256'))
    )
    with op.batch_alter_table('model', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_kind'), ['kind'], unique=False)

    op.create_table('task',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('wall_time_s', sa.Double(), nullable=True),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_task_campaign_id_campaign'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task')),
    sa.UniqueConstraint('campaign_id', 'key', name=op.f('uq_task_campaign_id_key'))
    )
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.create_index('ix_task_campaign_id_status', ['campaign_id', 'status'], unique=False)

    op.create_table('structure',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=True),
    sa.Column('task_id', sa.Integer(), nullable=True),
    sa.Column('composition_id', sa.Integer(), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('origin', sa.String(length=32), nullable=False),
    sa.Column('n_atoms', sa.Integer(), nullable=False),
    sa.Column('pbc', sa.String(length=3), nullable=False),
    sa.Column('numbers', sa.LargeBinary(), nullable=False),
    sa.Column('positions', sa.LargeBinary(), nullable=False),
    sa.Column('cell', sa.LargeBinary(), nullable=False),
    sa.Column('volume_per_atom', sa.Double(), nullable=True),
    sa.Column('spacegroup', sa.Integer(), nullable=True),
    sa.Column('fingerprint', sa.String(length=128), nullable=True),
    sa.Column('info', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_structure_campaign_id_campaign'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['composition_id'], ['composition.id'],
                            name=op.f('fk_structure_composition_id_composition')),
    sa.ForeignKeyConstraint(['parent_id'], ['structure.id'], name=op.f('fk_structure_parent_id_structure'),
                            ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['task_id'], ['task.id'], name=op.f('fk_structure_task_id_task'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_structure'))
    )
    with op.batch_alter_table('structure', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_structure_campaign_id'), ['campaign_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_structure_composition_id'), ['composition_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_structure_fingerprint'), ['fingerprint'], unique=False)
        batch_op.create_index(batch_op.f('ix_structure_origin'), ['origin'], unique=False)
        batch_op.create_index(batch_op.f('ix_structure_parent_id'), ['parent_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_structure_task_id'), ['task_id'], unique=False)

    op.create_table('energy',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('structure_id', sa.Integer(), nullable=False),
    sa.Column('method', sa.String(length=64), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=True),
    sa.Column('total', sa.Double(), nullable=False),
    sa.Column('per_atom', sa.Double(), nullable=False),
    sa.Column('fmax', sa.Double(), nullable=True),
    sa.Column('converged', sa.Boolean(), nullable=True),
    sa.Column('n_steps', sa.Integer(), nullable=True),
    sa.Column('wall_time_s', sa.Double(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['model.id'], name=op.f('fk_energy_model_id_model')),
    sa.ForeignKeyConstraint(['structure_id'], ['structure.id'], name=op.f('fk_energy_structure_id_structure'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_energy')),
    sa.UniqueConstraint('structure_id', 'method', name=op.f('uq_energy_structure_id_method'))
    )
    with op.batch_alter_table('energy', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_energy_method'), ['method'], unique=False)
        batch_op.create_index(batch_op.f('ix_energy_model_id'), ['model_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_energy_per_atom'), ['per_atom'], unique=False)
        batch_op.create_index(batch_op.f('ix_energy_structure_id'), ['structure_id'], unique=False)

    op.create_table('hull_entry',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('structure_id', sa.Integer(), nullable=False),
    sa.Column('method', sa.String(length=64), nullable=False),
    sa.Column('formation_energy_per_atom', sa.Double(), nullable=False),
    sa.Column('e_above_hull', sa.Double(), nullable=False),
    sa.Column('is_stable', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_hull_entry_campaign_id_campaign'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['structure_id'], ['structure.id'], name=op.f('fk_hull_entry_structure_id_structure'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hull_entry')),
    sa.UniqueConstraint('campaign_id', 'structure_id', 'method',
                        name=op.f('uq_hull_entry_campaign_id_structure_id_method'))
    )
    with op.batch_alter_table('hull_entry', schema=None) as batch_op:
        batch_op.create_index('ix_hull_entry_campaign_id_method', ['campaign_id', 'method'], unique=False)
        batch_op.create_index(batch_op.f('ix_hull_entry_e_above_hull'), ['e_above_hull'], unique=False)
        batch_op.create_index(batch_op.f('ix_hull_entry_structure_id'), ['structure_id'], unique=False)

    op.create_table('ranking',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('structure_id', sa.Integer(), nullable=False),
    sa.Column('method', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('score', sa.Double(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_ranking_campaign_id_campaign'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['structure_id'], ['structure.id'], name=op.f('fk_ranking_structure_id_structure'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ranking')),
    sa.UniqueConstraint('campaign_id', 'structure_id', 'method', 'scope',
                        name=op.f('uq_ranking_campaign_id_structure_id_method_scope'))
    )
    with op.batch_alter_table('ranking', schema=None) as batch_op:
        batch_op.create_index('ix_ranking_campaign_id_method_scope_rank', ['campaign_id', 'method', 'scope', 'rank'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_ranking_structure_id'), ['structure_id'], unique=False)

    op.create_table('trajectory',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('structure_id', sa.Integer(), nullable=False),
    sa.Column('method', sa.String(length=64), nullable=False),
    sa.Column('n_frames', sa.Integer(), nullable=False),
    sa.Column('steps', sa.LargeBinary(), nullable=False),
    sa.Column('energies', sa.LargeBinary(), nullable=False),
    sa.Column('fmax', sa.LargeBinary(), nullable=False),
    sa.Column('positions', sa.LargeBinary(), nullable=False),
    sa.Column('cells', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['structure_id'], ['structure.id'], name=op.f('fk_trajectory_structure_id_structure'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trajectory'))
    )
    with op.batch_alter_table('trajectory', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trajectory_structure_id'), ['structure_id'], unique=False)

    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table('trajectory', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trajectory_structure_id'))

    op.drop_table('trajectory')
    with op.batch_alter_table('ranking', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ranking_structure_id'))
        batch_op.drop_index('ix_ranking_campaign_id_method_scope_rank')

    op.drop_table('ranking')
    with op.batch_alter_table('hull_entry', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hull_entry_structure_id'))
        batch_op.drop_index(batch_op.f('ix_hull_entry_e_above_hull'))
        batch_op.drop_index('ix_hull_entry_campaign_id_method')

    op.drop_table('hull_entry')
    with op.batch_alter_table('energy', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_energy_structure_id'))
        batch_op.drop_index(batch_op.f('ix_energy_per_atom'))
        batch_op.drop_index(batch_op.f('ix_energy_model_id'))
        batch_op.drop_index(batch_op.f('ix_energy_method'))

    op.drop_table('energy')
    with op.batch_alter_table('structure', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_structure_task_id'))
        batch_op.drop_index(batch_op.f('ix_structure_parent_id'))
        batch_op.drop_index(batch_op.f('ix_structure_origin'))
        batch_op.drop_index(batch_op.f('ix_structure_fingerprint'))
        batch_op.drop_index(batch_op.f('ix_structure_composition_id'))
        batch_op.drop_index(batch_op.f('ix_structure_campaign_id'))

    op.drop_table('structure')
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.drop_index('ix_task_campaign_id_status')

    op.drop_table('task')
    with op.batch_alter_table('model', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_kind'))

    op.drop_table('model')
    with op.batch_alter_table('composition', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_composition_reduced_formula'))
        batch_op.drop_index(batch_op.f('ix_composition_chemsys'))

    op.drop_table('composition')
    op.drop_table('campaign')
