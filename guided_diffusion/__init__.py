"""The diffusion prior: the ADM UNet (``unet``), noise schedules and timestep respacing
(``respace``), the DDPM / DDIM reverse steps (``gaussian_diffusion``) and the
training command (``train``)."""
