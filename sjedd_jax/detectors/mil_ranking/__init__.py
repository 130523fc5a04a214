"""Contrastive MIL + multi-label ranking detector (Hong, Hsu, Liu, CVPR 2024; spec mil_ranking.md)."""
