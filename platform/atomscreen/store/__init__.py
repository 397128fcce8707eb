"""The SQL store: ORM models (models.py), engines and sessions (engine.py), migrations (migrate.py), and the only
code that speaks SQL: every write in write.py and write_tasks.py, every read in read.py and results.py; the plain
records they take and give in records.py."""

from atomscreen.chem import composition_fields
from atomscreen.store.engine import (
    DEFAULT_URL,
    DatabaseUnavailable,
    is_transient,
    make_engine,
    normalize_url,
    resolve_url,
    retry,
    transaction,
)
from atomscreen.store.read import (
    analysis_rows,
    campaign_models,
    campaign_names,
    campaign_summaries,
    children,
    count_tasks,
    get_campaign,
    model_by_recipe,
    open_payloads,
    structure_ids,
    structures,
    task_states,
    to_atoms,
    top_candidates,
    trajectory,
)
from atomscreen.store.records import (
    AnalysisRow,
    CampaignSummary,
    ClaimedTask,
    EnergyRecord,
    MatchRow,
    MethodAnalysis,
    NewStructure,
    NewTask,
    RankedRow,
    ReportRows,
    StoredModel,
    TrajectoryRecord,
)
from atomscreen.store.results import export_structures, hull_methods, hull_rows, ranked, ranked_methods, report_rows
from atomscreen.store.write import (
    add_analysis,
    add_campaign,
    add_energies,
    add_model,
    add_structures,
    add_trajectory,
    clear_analysis,
    delete_campaign,
    get_or_create_composition,
    link_model,
    replace_matches,
    set_campaign_status,
    set_novelty,
    set_qm9_novelty,
    spec_hash,
)
from atomscreen.store.write_tasks import (
    add_tasks,
    claim_tasks,
    record_task_failure,
    reset_running,
    write_structures,
    write_task_result,
)

__all__ = [
    "AnalysisRow", "CampaignSummary", "ClaimedTask", "DEFAULT_URL", "DatabaseUnavailable", "EnergyRecord",
    "MatchRow", "MethodAnalysis", "NewStructure", "NewTask", "RankedRow", "ReportRows", "StoredModel",
    "TrajectoryRecord", "add_analysis", "add_campaign", "add_energies", "add_model", "add_structures", "add_tasks",
    "add_trajectory", "analysis_rows", "campaign_models", "campaign_names", "campaign_summaries", "children",
    "claim_tasks", "clear_analysis", "composition_fields", "count_tasks", "delete_campaign", "export_structures",
    "get_campaign", "get_or_create_composition", "hull_methods", "hull_rows", "is_transient", "link_model",
    "make_engine", "model_by_recipe", "normalize_url", "open_payloads", "ranked", "ranked_methods",
    "record_task_failure", "replace_matches", "report_rows", "reset_running", "resolve_url", "retry",
    "set_campaign_status", "set_novelty", "set_qm9_novelty", "spec_hash", "structure_ids", "structures",
    "task_states", "to_atoms", "top_candidates", "trajectory", "transaction", "write_structures",
    "write_task_result"
]
