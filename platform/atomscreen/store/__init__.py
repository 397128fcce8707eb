"""The SQL store: ORM models, engines and sessions, migrations, and the read/write API."""

from atomscreen.store.api import (
    CampaignSummary,
    EnergyRecord,
    TrajectoryRecord,
    add_campaign,
    add_energies,
    add_model,
    add_structures,
    campaign_summaries,
    composition_fields,
    get_campaign,
    get_or_create_composition,
    spec_hash,
    structures,
    to_atoms,
    trajectory,
)
from atomscreen.store.engine import DEFAULT_URL, make_engine, normalize_url, resolve_url, transaction

__all__ = [
    "DEFAULT_URL",
    "CampaignSummary",
    "EnergyRecord",
    "TrajectoryRecord",
    "add_campaign",
    "add_energies",
    "add_model",
    "add_structures",
    "campaign_summaries",
    "composition_fields",
    "get_campaign",
    "get_or_create_composition",
    "make_engine",
    "normalize_url",
    "resolve_url",
    "spec_hash",
    "structures",
    "to_atoms",
    "trajectory",
    "transaction",
]
