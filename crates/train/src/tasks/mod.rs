//! The stages' tasks: what each one plugs into the shared loop (its batches
//! and its loss), and the evaluation they share.
//!
//! | stage | task | loss |
//! |---|---|---|
//! | pretraining | [`pretrain::PretrainTask`] | next-token cross-entropy on windows of text |
//! | SFT, LoRA | [`sft::SftTask`] | cross-entropy on the assistant's tokens only |
//! | DPO | [`dpo::DpoTask`] | the DPO loss ([`dpo_loss`]) on preference pairs |

pub mod dpo;
pub mod dpo_loss;
pub mod eval;
pub mod pretrain;
pub mod sft;
