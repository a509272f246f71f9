"""The tool version: recorded in every manifest and in the fingerprint that --resume compares."""

__version__ = "0.3.0"
