"""campaign runner: task positions, dedupe representatives, the campaign's model, ranked view

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

- structure.task_index with UNIQUE (task_id, task_index): a task's results can be
  written once only, whatever the driver or Dask does;
- structure.representative_id: NULL for a unique structure, else the
  lowest-energy structure it duplicates (StructureMatcher);
- campaign.source: the submitted YAML's path (relative paths in it resolve there on resume);
- campaign.model_id: the pseudo potential a campaign relaxes with, so resume reuses it;
- views: structure_energies gains spacegroup and representative_id; new view
  ranked_candidates (rankings with formula, energy, volume and e_above_hull).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

VIEWS = {
    "structure_energies": """
        SELECT c.name AS campaign, s.id AS structure_id, s.origin, s.parent_id, s.representative_id,
               comp.formula, comp.reduced_formula, comp.chemsys, s.n_atoms, s.volume_per_atom, s.spacegroup,
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
    "ranked_candidates": """
        SELECT c.name AS campaign, r.method, r.scope, r.rank, r.structure_id,
               comp.formula, comp.reduced_formula, comp.chemsys, s.n_atoms,
               r.score AS energy_per_atom, s.volume_per_atom, s.spacegroup, e.converged,
               h.formation_energy_per_atom, h.e_above_hull, h.is_stable
        FROM ranking r
        JOIN campaign c ON c.id = r.campaign_id
        JOIN structure s ON s.id = r.structure_id
        JOIN composition comp ON comp.id = s.composition_id
        LEFT JOIN energy e ON e.structure_id = r.structure_id AND e.method = r.method
        LEFT JOIN hull_entry h ON h.campaign_id = r.campaign_id"""  # split only for line length: same SQL text
    """ AND h.structure_id = r.structure_id AND h.method = r.method
    """,
}


def _views_0001() -> dict[str, str]:
    """The views as revision 0001 made them (restored on downgrade)."""
    spec = importlib.util.spec_from_file_location("_rev0001", Path(__file__).with_name("0001_initial_schema.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VIEWS


def upgrade() -> None:
    # SQLite rebuilds altered tables (batch mode); views over them must go first
    for name in reversed(_views_0001()):
        op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table('campaign', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('model_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_campaign_model_id_model'), 'model', ['model_id'], ['id'])
    with op.batch_alter_table('structure', schema=None) as batch_op:
        batch_op.add_column(sa.Column('task_index', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('representative_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_structure_representative_id'), ['representative_id'], unique=False)
        batch_op.create_unique_constraint(batch_op.f('uq_structure_task_id_task_index'), ['task_id', 'task_index'])
        batch_op.create_foreign_key(batch_op.f('fk_structure_representative_id_structure'), 'structure',
                                    ['representative_id'], ['id'], ondelete='SET NULL')
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table('structure', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_structure_representative_id_structure'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('uq_structure_task_id_task_index'), type_='unique')
        batch_op.drop_index(batch_op.f('ix_structure_representative_id'))
        batch_op.drop_column('representative_id')
        batch_op.drop_column('task_index')
    with op.batch_alter_table('campaign', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_campaign_model_id_model'), type_='foreignkey')
        batch_op.drop_column('model_id')
        batch_op.drop_column('source')
    for name, body in _views_0001().items():
        op.execute(f"CREATE VIEW {name} AS {body}")
