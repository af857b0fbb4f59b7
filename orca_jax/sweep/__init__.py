"""Research questions answered with seeds and intervals: named sets of config overrides (variants) run over seeds,
one workdir each, reported as means with 95 % Student-t intervals and the paper's two plots.

Why a harness: the effects ORCA reports (alignment helps, OTDD beats MMD, a lower final distance goes with a better
test metric, Fig. 4) are differences of a few points, and on small tasks one seed moves the test metric as much. One
run per variant cannot separate them; an interval over seeds says when the seeds cannot either.

- `variants`: what a sweep runs. `SWEEPS` holds the built-in sweeps; a variant is a dict of dotted config overrides.
  A variant with `align_from` differs from that variant only in refine settings, so it refines from the embedder
  that variant aligned for the same seed (`align.epochs=0`, `refine.init_embedder`): aligned once, its differences
  are the refine settings alone, and it reports that run's final distance.
- `runner.run_sweep`: variants x seeds one after another in this process, each in `DIR/<variant>/seed<k>` through
  `orca_jax.pipeline.run` (which resumes an interrupted workdir). A run whose workdir holds a summary of the same
  config is not run again; a failing run is recorded and the sweep goes on, except on a full disk or a preemption,
  which stop it (every later run would fail, or should resume later). With `baselines`, the simple baselines of
  `orca_jax.baselines` are then fitted per seed on the same split (`DIR/baselines/seed<k>`, reused when the task
  and data are unchanged) and reported as rows `baseline: <name>` of the same table. One sweep at a time holds
  `DIR` (the lock of `orca_jax.workdir.RunLock`); a second is refused at once.
- `records.RunRecord`: one run's outcome; `report`: the statistics, tables and plots over records.
- `bodies.select_bodies`: the paper's body selection. A short alignment per candidate body ranks them by final
  distance to each body's own source features; optionally full runs of the top bodies x seeds check the ranking
  against the test metric in one table.

A seed draws the model's initialisation, the data order and the validation split; the test split stays fixed
(`orca_jax.data.tasks`), so variants of one seed are compared on the same data.
"""
