"""Understanding the data and the models: the EDA report (`hms eda`), OOF evaluation
(`hms evaluate`), Grad-CAM / occlusion explanations (`hms explain`) and the shared window
readers and figures the Streamlit viewer (`hms app`) also uses."""
