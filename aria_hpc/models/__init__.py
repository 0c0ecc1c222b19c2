"""Teacher/student loading, construction and sampling (diffusers models, local directories only)."""
