//! Live previews while sampling: a cheap projection of SD 1.5 latents to RGB with a fixed 4x3 matrix (the
//! linear fit ComfyUI uses for its "latent2rgb" previews), at latent resolution, without the VAE.

use burn::tensor::Tensor;
use image::RgbImage;

/// Rows: latent channels 0..4; columns: R, G, B (applied to the scaled latents the UNet sees).
pub const SD15_LATENT_RGB: [[f32; 3]; 4] =
    [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]];

/// The images of latents [B, C, F, h, w]: `B * F` images of h x w (sample-major), each pixel
/// `(latent . matrix + 1) / 2` clamped to [0, 1]. None for latents that do not have 4 channels (the matrix
/// is SD 1.5's) or whose data cannot be read.
pub fn latent_rgb(latents: &Tensor<5>) -> Option<Vec<RgbImage>> {
    let [b, c, f, h, w] = latents.dims();
    if c != SD15_LATENT_RGB.len() || h == 0 || w == 0 {
        return None;
    }
    let data = latents.clone().into_data().convert::<f32>();
    let values = data.as_slice::<f32>().ok()?;
    let plane = h * w;
    let mut images = Vec::with_capacity(b * f);
    for sample in 0..b {
        for frame in 0..f {
            let mut image = RgbImage::new(w as u32, h as u32);
            for (i, pixel) in image.pixels_mut().enumerate() {
                let mut rgb = [0.0f32; 3];
                for (channel, row) in SD15_LATENT_RGB.iter().enumerate() {
                    let v = values[((sample * c + channel) * f + frame) * plane + i];
                    for k in 0..3 {
                        rgb[k] += v * row[k];
                    }
                }
                pixel.0 = rgb.map(|x| (((x + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8);
            }
            images.push(image);
        }
    }
    Some(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pixel_is_the_matrix_applied_to_its_channels() {
        let device = burn::tensor::Device::flex();
        // [1, 4, 2, 1, 2]: two frames of 1x2 pixels, channel values chosen per pixel.
        let values: Vec<f32> = (0..16).map(|i| (i as f32 - 8.0) / 8.0).collect();
        let t = Tensor::<5>::from_data(burn::tensor::TensorData::new(values.clone(), [1, 4, 2, 1, 2]), &device);
        let images = latent_rgb(&t).unwrap();
        assert_eq!(images.len(), 2);
        for (frame, image) in images.iter().enumerate() {
            assert_eq!(image.dimensions(), (2, 1));
            for x in 0..2 {
                let channels: Vec<f32> = (0..4).map(|c| values[(c * 2 + frame) * 2 + x]).collect();
                for (k, _) in SD15_LATENT_RGB[0].iter().enumerate() {
                    let v: f32 = channels.iter().zip(&SD15_LATENT_RGB).map(|(x, row)| x * row[k]).sum();
                    let expected = (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8;
                    assert_eq!(image.get_pixel(x as u32, 0).0[k], expected, "frame {frame} x {x} channel {k}");
                }
            }
        }
        let three = Tensor::<5>::zeros([1, 3, 1, 2, 2], &device);
        assert!(latent_rgb(&three).is_none(), "not SD 1.5 latents");
    }
}
