"""Datasets (image collections): archives in, validated images and labels stored."""
