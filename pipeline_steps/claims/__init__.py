"""The papers' claims, judged on a run's tables (no torch here).

``resources/claims.yaml`` holds each paper's headline findings as data: the sentence, where it
stands in the paper, the paper's own number and setting, the measure that evaluates it over this
project's tables and the side of the null it claims. ``spec`` loads and checks that file,
``measures`` turns tables into per-setting effects (one value per seed, or one value with its
sampling error), ``verdict`` gives each effect its 95% interval and verdict, ``steps`` writes
``results/tables/claims.parquet`` and its figure. docs/reproduction.md explains the rules.
"""
