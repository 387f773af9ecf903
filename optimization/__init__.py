"""Choosing the classifier's topology. The DEAP genetic search (issue #3) plugs in here."""
