//! The `minecraft` listener's parts. For now only the Java edition protocol codec, on which the
//! listener (routing by hostname, sleeping MOTD, hold and transfer) is to be built.

pub mod codec;
