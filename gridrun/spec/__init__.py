"""YAML grid spec -> validated trials. The only package that knows the YAML shape.

    name: smoke                       # experiment name: runs/<name>/, reports/<name>.md
    data: {dataset: mnist, val_size: 5000, subset: null, split_seed: 0, data_dir: null}
    modules: [mynets]                 # optional: your modules; their @register_model nets become names
    base: {epochs: 20, batch_size: 64}   # TrainConfig fields every trial shares
    grid:                             # axes; trials are their cross product
      model: [vanilla, dropout]       #   an axis named after a TrainConfig field takes values
      scheduler: [none, step]
      variant:                        #   any other name: each value is a dict of fields
        - {model: resnet20, batch_size: 128}
      lr: {loguniform: [0.001, 1]}    #   a distribution: `samples` configs are drawn from it
    samples: 20                       # configs drawn per list-axis combination (sample_seed: 0)
    seeds: 3                          # n -> seeds 0..n-1, or a list
    resources: {cpu: 1, gpu: 0.125}   # per trial; gpu a fraction in (0, 1] or a whole number
    retries: 2                        # a trial that raises is retried from its checkpoint
    early_stop: {grace_period: 5, reduction_factor: 3}   # optional ASHA on val_acc (in fused groups: rungs)
    prune: {rungs: [3, 6], keep: 0.5}  # optional successive halving at these epochs (instead of early_stop)
    fuse: 8                           # optional: train up to 8 same-architecture trials as one
    constraints: {max_params: 20000, max_epochs: 20, target_test_acc: 0.994}
    report: {top_k: 5, reference: tiny_nets_study.csv}
    max_trials: 5000                  # a larger grid is refused unless this says so
    search: {sampler: tpe, trials: 48, seed: 0, confirm: {top: 3, seeds: 5}}
                                      # optional: a study (study.py) instead of the grid's cross product

Validation happens here, before anything is written or started: the spec's shape (pydantic,
unknown keys name the nearest valid one), every expanded trial's TrainConfig, duplicate
configs, the size of the grid and the parameter budget. Four modules, each using those before it:
`schema` (the YAML shape, overrides, reading a file), `sampling` (the grid's points and draws),
`preflight` (models, memory and budget checked before a run) and `expansion` (the trials).
"""
from .schema import (CONFIG_KEYS, DEFAULT_MAX_TRIALS, DISTRIBUTIONS, NAME_RE, SPEC_KEYS_NOT_IN_BASE,  # noqa: F401
                     Confirm, Constraints, Data, EarlyStop, Prune, ReportOpts, Resources, Search, Spec, SpecError,
                     apply_overrides, asha, asha_milestones, load, n_trials, parse, read_raw, rung_fields, safe_yaml,
                     subgrids)
from .sampling import SAMPLE_DIGITS, points, sample_configs  # noqa: F401
from .preflight import MAX_TRIAL_GIB, check_budget, check_models, data_shape  # noqa: F401
from .expansion import expand, load_trials, name_part, user_models  # noqa: F401
