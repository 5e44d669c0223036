"""Writes a copy of the first JPEG of a folder carrying personal metadata, as phone photos do: EXIF artist,
description and GPS position, and a JPEG comment. Prints the marker strings a test can search for.

usage: exif_photo.py SOURCE_FOLDER TARGET_JPEG
"""
import os
import sys

from PIL import Image

source_dir, target = sys.argv[1:3]
source = os.path.join(source_dir, sorted(os.listdir(source_dir))[0])
markers = {"artist": "ArtistJaneDoe7731", "description": "HomeAddressMarker5521", "comment": "CommentMarker9043"}
image = Image.open(source)
exif = Image.Exif()
exif[0x013B] = markers["artist"]  # Artist
exif[0x010E] = markers["description"]  # ImageDescription
gps = exif.get_ifd(0x8825)
gps[1], gps[2] = "N", (48.0, 51.0, 29.6)  # GPSLatitudeRef, GPSLatitude
gps[3], gps[4] = "E", (2.0, 17.0, 40.2)  # GPSLongitudeRef, GPSLongitude
os.makedirs(os.path.dirname(target), exist_ok=True)
image.save(target, exif=exif, comment=markers["comment"].encode())
assert Image.open(target).getexif()[0x013B] == markers["artist"]
print(" ".join(markers.values()))
