"""Live events across instances (bus.py: publish and subscribe; pg.py: PostgreSQL transport)."""
