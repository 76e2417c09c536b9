"""lepton-controller: Raft-replicated cluster state, the gRPC API and the leader's loops."""
