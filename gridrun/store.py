"""The names gridrun.storage's modules had when they were one module, kept while the other
issue-37 branches (engine, record) still import them from here; new code imports gridrun.storage."""
from .storage.events import write_event_file  # noqa: F401
from .storage.layout import (CONFIG, DIFFS, EPOCH_FIELDS, ERROR, EVENTS, EXPORT_MARK, GROUP_FILE,  # noqa: F401
                             LAUNCHES, LOCK, MANIFEST, METRICS, MODEL, N_CLASSES, NODE, PARAMS, RAY_LOG,
                             REFERENCE, RESULT, RESULT_FILES, RESUME, SPEC_COPY, SPLITS, STATE, STATE_INFO,
                             STOPPED, SUMMARY, TRIAL_MARKS, WHOLE_JSON, ExperimentDir, StateError,
                             TrialDir, diff_file, error_line, event_files, experiment_above, finite_number,
                             labels_file, logits_file, parse_state_info, preds_file, read_history, read_state)
from .storage.locks import STALE_S, dead_here, holder_line, lock_owner  # noqa: F401
from .storage.provenance import provenance, versions  # noqa: F401
from .storage.safeio import (MAX_LARGE, MAX_SMALL, MAX_TAIL, Unreadable, atomic_save, json_lines,  # noqa: F401
                             present, read_bytes, read_json, read_npy, read_text)
from .storage.sweep import sweep_half_files, sweep_temp_files  # noqa: F401
