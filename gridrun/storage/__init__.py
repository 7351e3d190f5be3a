"""Where an experiment's files live and how they are written and read, one concern per module:
safeio (the only code that opens files: bounded reads, atomic writes), locks (one lock protocol,
one heartbeat), layout (every file name; TrialDir, ExperimentDir), provenance, events
(TensorBoard event files), sweep (after a launch or a full disk), s3 (the object store), and
backends (LocalStorage / S3Storage, the one interface the launch driver calls).

Imports nothing here: gridrun's ground layer (diskio) imports safeio without the rest."""
