"""What starts, drives and measures clusters: the runner, nginx rendering, the CLI, demo and bench."""
