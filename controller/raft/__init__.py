"""Lepton's own Raft: a pure consensus core, a write-ahead log, gRPC transport and an asyncio driver.

Layout (etcd raft is the model; the core never touches network, disk or clock):
- types.py      messages, entries, hard state, snapshots, Ready (the contract between layers)
- core.py       the pure state machine: step(), tick(), propose(), ready()/advance()
- wal.py        segment files with CRC per record, fsync/group commit, torn-tail repair
- snapshots.py  atomic snapshot files
- transport.py  RaftService over gRPC (proto/lepton/v1/raft.proto), one stream per peer
- node.py       the asyncio driver: RaftNode.propose()/read_index()/leadership callbacks
"""
