#![no_std]
//! Shared helpers of Palisade's eBPF programs (the programs live in the binaries).
