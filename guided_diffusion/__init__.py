"""The diffusion prior: the ADM UNet (``unet``), noise schedules and timestep respacing
(``respace``), the DDPM / DDIM samplers with a solver hook (``gaussian_diffusion``) and the
training command (``train``)."""
