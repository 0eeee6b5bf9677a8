"""Figures and tables from results: run plots and comparisons (plots, prior_plots), the round
trip of your own images (roundtrip_plots), the compare table (summary), and the arrays a plot
needs from a checkpoint (arrays)."""
