from glob import glob

from setuptools import find_packages, setup

package_name = 'boq_vpr'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    # the shipped weights (resnet18_nordland) and the demo drive (Nordland frames 2400-3575) are
    # package data: pip and colcon install them
    package_data={'training': ['configs/*.yaml'],
                  'boq_vpr': ['weights/*.pt', 'data/nordland_heldout/README.md',
                              'data/nordland_heldout/summer/*.png', 'data/nordland_heldout/winter/*.png']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml')),
    ],
    python_requires='>=3.10',
    # Loose pins: on a Jetson, torch comes from JetPack's wheel, rclpy and messages from apt.
    install_requires=[
        'setuptools',
        'numpy>=1.22',
        'scipy>=1.8',   # the detector's tail probabilities (Student's t)
        'torch>=2.1',
        'torchvision>=0.16',
        'opencv-python-headless>=4.8',
        'faiss-cpu>=1.7.4',
        'threadpoolctl>=3.1',
        'onnx>=1.15',
        # torch.onnx.export(dynamo=True) imports onnxscript; torch does not install it.
        'onnxscript>=0.3',
        'onnxruntime>=1.16',
        'rosbags>=0.9.20',
        'rosbags-image>=0.9',
        'pyyaml>=6',
        'tqdm>=4.60',
        'matplotlib>=3.6',
        'psutil>=5.9',   # boq-vpr bench node: the node's memory
    ],
    extras_require={
        # Machines without a ROS install only: rclpy and the message packages from PyPI.
        'ros': [
            'ros-kilted-rclpy',
            'ros-kilted-rmw-fastrtps-cpp',
            'ros-kilted-sensor-msgs',
            'ros-kilted-std-msgs',
            'ros-kilted-std-srvs',
            'ros-kilted-geometry-msgs',
            'ros-kilted-nav-msgs',
            'ros-kilted-visualization-msgs',
            'ros-kilted-diagnostic-msgs',
            'ros-kilted-rosgraph-msgs',
            'ros-kilted-lifecycle-msgs',   # the lifecycle node's services (also pulled in by rclpy)
        ],
        'training': [
            'lightning>=2.1',
            'pytorch-metric-learning>=2.3',
            'pandas>=1.5',
            'scipy>=1.8',
        ],
        # Fastest CPU path measured (bf16 on AVX512_BF16/AMX CPUs): the openvino backend.
        'openvino': [
            'openvino>=2024.1',
        ],
        # Desktop GPU machines: TensorRT from PyPI (pulls NVIDIA's libraries). onnxruntime-gpu replaces
        # onnxruntime by hand (see README); on a Jetson, JetPack provides TensorRT.
        'gpu': [
            'tensorrt>=10,<11',  # the backend uses TensorRT 10's FP16/INT8 builder flags (removed in 11)
        ],
        'test': [
            'openvino>=2024.1',  # the openvino backend is tested in CI
            'pytest>=7',
            'psutil>=5.9',
            'colcon-common-extensions',
            # the static TensorRT API check; its stubs come with --no-deps (boq.sh): tensorrt-stubs==10.13.0.35.1
            'mypy>=1.10',
            # the linter (ruff.toml, test/test_lint.py); pinned to a minor release, whose rules do not move
            'ruff>=0.17.6,<0.18',
        ],
    },
    zip_safe=False,   # the shipped weights and frames are read from the installed folder
    maintainer='boq_vpr maintainers',
    maintainer_email='maintainers@boq-vpr.invalid',
    description='Visual place recognition loop closures for SLAM with BoQ.',
    license='MIT',
    entry_points={
        'console_scripts': [
            'boq-vpr = boq_vpr.cli:main',
            'boq_vpr = boq_vpr.cli:main',
            'vpr_node = boq_vpr.ros.node:main',
        ],
    },
)
