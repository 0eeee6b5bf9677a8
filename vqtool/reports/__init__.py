"""Figures and tables from results: run plots and comparisons (plots, prior_plots), the
compare table (summary), and the arrays a plot needs from a checkpoint (arrays)."""
