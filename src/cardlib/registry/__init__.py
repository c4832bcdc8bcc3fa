"""Registry side of cardlib: publish models into the organized store, the manifest, registries, verify."""
from cardlib.registry.artifacts import (ArtifactError, dashboard_config, experiments_index, readme_text,
                                        render_dashboard_html, write_all, write_dashboard, write_deployment_bundle,
                                        write_experiments_index, write_readme, write_training_pipeline)
from cardlib.registry.backends import (GATES_FOR, NAMES, GateDecision, MlflowRegistry, ModelRegistry, OnnxEmbedder,
                                       RegisteredVersion, RegistryError, RegistryRegionError, SageMakerRegistry,
                                       ecr_region, gate_decisions, registry_from_params, resolve_image_uri)
from cardlib.registry.manifest import (ManifestError, ModelEntry, ProjectManifest, build_manifest, parse_manifest,
                                       read_manifest, write_manifest)
from cardlib.registry.publish import MODEL_IDS, PublishError, model_records, publish_models, stage_list
from cardlib.registry.verify import VerifyReport, VerifyRow, verify, verify_main

__all__ = [
    "ArtifactError", "dashboard_config", "experiments_index", "readme_text", "render_dashboard_html", "write_all",
    "write_dashboard", "write_deployment_bundle", "write_experiments_index", "write_readme",
    "write_training_pipeline", "GATES_FOR", "NAMES", "GateDecision", "MlflowRegistry", "ModelRegistry", "OnnxEmbedder",
    "RegisteredVersion", "RegistryError", "RegistryRegionError", "SageMakerRegistry", "ecr_region",
    "gate_decisions", "registry_from_params", "resolve_image_uri", "ManifestError", "ModelEntry", "ProjectManifest",
    "build_manifest", "parse_manifest", "read_manifest", "write_manifest", "MODEL_IDS", "PublishError",
    "model_records", "publish_models", "stage_list", "VerifyReport", "VerifyRow", "verify", "verify_main",
]
