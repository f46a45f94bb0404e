"""What comes in.

Image files and messages as RGB (``images``), rosbag2 and ROS 1 bags (``bags``), poses looked up by
stamp (``poses``), ground truth for evaluation (``ground_truth``) and the Nordland frames that ship
with the package (``sample_data``).
"""
