"""Why Open3D's legacy ``ScalableTSDFVolume`` is not a comparison in ``bench_fusion.py`` (issue #19): in this build it
integrates nothing in the canonical case of Open3D's own tutorial, while ``UniformTSDFVolume`` fuses the same frame.

One frame of a plane facing the camera (160×120, f = 100 px, identity extrinsic), depth as uint16 millimetres with
``depth_scale=1000`` (the tutorial's input) and as float32 metres, at 1 m with 1 cm voxels and at 5 cm with 1 mm
voxels, truncation 4 voxels. Prints the points and mesh vertices each volume extracts.

Usage: ``python Testing/benchmarks/open3d_scalable_check.py``.
"""
from __future__ import annotations

import numpy as np

W, H, F = 160, 120, 100.0


def rgbd(o3d, depth_m: float, kind: str):
    if kind == "uint16 mm":
        depth, scale = o3d.geometry.Image(np.full((H, W), depth_m * 1000.0, np.uint16)), 1000.0
    else:
        depth, scale = o3d.geometry.Image(np.full((H, W), depth_m, np.float32)), 1.0
    colour = o3d.geometry.Image(np.full((H, W, 3), 128, np.uint8))
    return o3d.geometry.RGBDImage.create_from_color_and_depth(colour, depth, depth_scale=scale, depth_trunc=100.0,
                                                              convert_rgb_to_intensity=False)


def main() -> None:
    import open3d as o3d

    integration = o3d.pipelines.integration
    camera = o3d.camera.PinholeCameraIntrinsic(W, H, F, F, W / 2, H / 2)
    print(f"Open3D {o3d.__version__}\n")
    print("| depth input | plane at | voxel | ScalableTSDFVolume points / vertices "
          "| UniformTSDFVolume points / vertices |")
    print("|---|---|---|---|---|")
    for kind in ("uint16 mm", "float32 m"):
        for depth_m, voxel in ((1.0, 0.01), (0.05, 0.001)):
            image = rgbd(o3d, depth_m, kind)
            volumes = (integration.ScalableTSDFVolume(voxel_length=voxel, sdf_trunc=4 * voxel,
                                                      color_type=integration.TSDFVolumeColorType.RGB8),
                       integration.UniformTSDFVolume(length=200 * voxel, resolution=200, sdf_trunc=4 * voxel,
                                                     color_type=integration.TSDFVolumeColorType.RGB8,
                                                     origin=np.array([-100 * voxel, -100 * voxel, 0.0])))
            counts = []
            for vol in volumes:
                vol.integrate(image, camera, np.eye(4))
                counts.append(f"{len(vol.extract_point_cloud().points)} / {len(vol.extract_triangle_mesh().vertices)}")
            print(f"| {kind} | {depth_m} m | {voxel * 1000:g} mm | {counts[0]} | {counts[1]} |")


if __name__ == "__main__":
    main()
