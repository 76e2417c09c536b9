"""lepton-agent: the node agent (metrics sampler, task runner, reconciler, controller session)."""
