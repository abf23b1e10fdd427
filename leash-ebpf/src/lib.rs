//! Leash's eBPF programs. Not written yet: the transparent-interception work
//! (cgroup `connect4/6`, `sockops`, `getpeername4/6`) lands here. Until then
//! the agent has no kernel side and `leash run` is not offered.
#![no_std]
