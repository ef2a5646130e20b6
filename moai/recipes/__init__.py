"""End-to-end recipes that chain the project's commands (docs/shapesworld.md)."""
