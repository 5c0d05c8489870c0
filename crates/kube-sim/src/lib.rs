//! kube-sim: a local Kubernetes API emulator (work in progress).
