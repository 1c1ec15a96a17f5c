use berth_proto::cri::image_service_server::ImageService;
use berth_proto::cri::*;

use super::list_stream::Batches;

super::cri_service_impl! {
    impl ImageService {
        type StreamImagesStream = Batches<StreamImagesResponse>;
        handled {
            list_images(ListImagesRequest) -> ListImagesResponse;
            stream_images(StreamImagesRequest) -> Batches<StreamImagesResponse>;
            image_status(ImageStatusRequest) -> ImageStatusResponse;
            pull_image(PullImageRequest) -> PullImageResponse;
            remove_image(RemoveImageRequest) -> RemoveImageResponse;
            image_fs_info(ImageFsInfoRequest) -> ImageFsInfoResponse;
        }
    }
}
