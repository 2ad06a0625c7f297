"""scaleout: a cluster that shows why web login is hard to scale out, and what each remedy costs."""

__version__ = "0.1.0"
