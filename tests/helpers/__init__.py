"""What tests share besides fixtures (those are in the conftest.py files): generators and
helpers of prebake's own tests, never a reference for its values (that is `reference`).

- `stores`: fixture paths, the command in a subprocess, small-shard builds, store comparison;
- `processes`: children, kill -9, listening sockets of the processes a test starts;
- `runs`: `prebake build` started, killed, interrupted and resumed on the reliability source;
  a unit held open by a named pipe in place of a frame (`frame_held`);
- `damage`: faults injected into a copy of a store for `verify` to find;
- `scale_out`: an S3 API on loopback, remote stores compared with local ones;
- `videos`: small videos of many encodings (the decoder-parity matrix).
"""
