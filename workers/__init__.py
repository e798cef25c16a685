"""Background workers of Visor: the face pipeline core and model training code."""
