"""Where the cluster runs: one driver per place (local processes, a compose stack), behind
`base.ClusterDriver`; no driver imports another (an import contract in `make lint`)."""
