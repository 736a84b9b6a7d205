"""Result files of runs: the per-query store, summaries, tables and plots."""
