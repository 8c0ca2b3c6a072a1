//! The SD 1.5 + AnimateDiff family: the SD 1.x UNet with AnimateDiff's motion modules woven into its walk
//! ([`unet`], [`unet::motion`]), a Stable Diffusion 1.x model as artists have it ([`stable_diffusion`]:
//! diffusers folders and single-file checkpoints, [`single_file`]). The UNet's walk also serves the ModelScope
//! family (its temporal layers through [`unet::TemporalLayers`]).

pub mod single_file;
pub mod stable_diffusion;
pub mod unet;
