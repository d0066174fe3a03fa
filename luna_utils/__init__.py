"""Helpers for the LUNA16 lung-nodule detection tutorial."""
