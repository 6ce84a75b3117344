"""Datasets (image collections; the API's ``/datasets``): archives in, validated images and
labels stored, deletion."""
