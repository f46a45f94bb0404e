"""What comes in.

Image files and messages as RGB (``images``), ROS message types and poses read out of messages
(``messages``), rosbag2 and ROS 1 bags read (``bags``) and written (``bag_writer``), poses looked up
by stamp (``poses``), ground truth for evaluation (``ground_truth``) and the Nordland frames that
ship with the package (``sample_data``).
"""
