use berth_proto::cri::image_service_server::ImageService;
use berth_proto::cri::*;

super::cri_service_impl! {
    impl ImageService {
        handled {
            list_images(ListImagesRequest) -> ListImagesResponse;
            image_status(ImageStatusRequest) -> ImageStatusResponse;
            pull_image(PullImageRequest) -> PullImageResponse;
            remove_image(RemoveImageRequest) -> RemoveImageResponse;
            image_fs_info(ImageFsInfoRequest) -> ImageFsInfoResponse;
        }
    }
}
