"""qscale.study: studies as definitions on one core.

- ``core``: tables, cell keys (with their config hash), typed rows, picklable tasks, the ``Store`` interface
  and the ``StudyDefinition`` protocol; ``store``: the SQL store and SQLite (WAL), ``pg_store``: PostgreSQL,
  ``migrations/``: their versioned schema; ``executor``: where tasks run (``LocalExecutor`` in process),
  ``ray_executor``: on a Ray cluster; ``backends``: what ``--db``/``--executor`` name, the study-folder lock;
  ``runner``: ``run_study`` skips stored cells, commits each row as it
  arrives, times phases, draws progress and writes the definition's report.
- ``qid`` / ``qid_cells`` / ``grid``: the QiD study (Ouyang et al. 2024) on the built-in suite or the user's
  checkpoints (``checkpoints``); ``qat`` / ``qat_cells`` / ``qat_grid``: the QAT study (Chen et al. 2025).
- the commands ``qscale study qid`` and ``qscale study qat`` live in :mod:`qscale.cli` (``study_qid``, ``study_qat``).

Import the submodules directly; the package imports nothing.
"""
