"""qscale.study: study grids and presets (``grid``), the study core (``core``, ``runner``), result stores
(``store``: SQLite, ``pg_store``: PostgreSQL, ``backends``: ``--db``/``--executor``), executors (``executor``,
``ray_executor``), the QiD runner
(``qid``: ``build_study``, ``run_qid_study``) and the CLI (``cli``). The measurement-noise policy lives
with evaluation (:mod:`qscale.evaluate.noise`).

Import the submodules directly; this package imports nothing.
"""
