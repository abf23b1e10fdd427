//! Transparent interception: the kernel hooks that redirect connections, the
//! table of provider hosts and their addresses, and who a redirected caller
//! is. The proxy side lives in `proxy::transparent`.

pub mod caller;
pub mod cgroup;
pub mod config;
pub mod hooks;
pub mod hosts;
pub mod pin;
pub mod shadow;
